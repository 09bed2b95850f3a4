"""Compliance Jobs: the domain logic behind the Airflow DAGs, plain Python, no scheduler needed."""

__version__ = "0.1.0"
