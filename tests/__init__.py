"""The analyst's package's tests (em_sales_tools); test_em_sales.py beside the package tests the
estimator alone. python -m unittest runs both."""
