-- The compose Postgres serves MLflow (database `mlflow`, created by POSTGRES_DB) and the Prefect server.
CREATE DATABASE prefect;
