"""mlpipe core: typed config in, arrays/models/reports out. No Prefect here."""
