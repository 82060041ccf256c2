#!/bin/sh
# MLflow tracking server: Postgres backend, artifacts on S3/MinIO (proxied), basic-auth app.
# The auth app reads its user database from an ini file only, so the file is written here from
# the environment at start-up (never stored in the image or the repository).
set -eu
: "${MLFLOW_DB_URI:?}" "${MLFLOW_AUTH_DB_URI:?}" "${MLFLOW_ARTIFACTS:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"
umask 077
cat > /tmp/mlflow-auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DB_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/mlflow-auth.ini MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-4}" \
  --backend-store-uri "$MLFLOW_DB_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1:*}" \
  --app-name basic-auth
