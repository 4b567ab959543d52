"""python -m em_sales_tools FILE [options]: the analyst's command line (python -m em_sales_tools --help)."""
from em_sales_tools.cli import main

raise SystemExit(main())
