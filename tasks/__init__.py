"""Pipeline steps: pure functions first, thin Prefect @task wrappers below them."""
