"""`python -m support_eval SUITE` is `support-eval SUITE`."""

from support_eval.cli import main

main()
