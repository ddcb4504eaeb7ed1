"""`python -m millrace.platform start | stop | status | wait-for`: `make server`'s entry point."""

from millrace.platform.control import main

main()
