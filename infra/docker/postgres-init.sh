#!/bin/sh
# First start of the Postgres container: one database per service (POSTGRES_DB is mlflow).
set -eu
for db in mlflow_auth prefect optuna; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE $db"
done
