"""The process exit codes every command shares (``agentaskit-dr --help`` lists them)."""

#: Done (for ``check-primary``: the answer is "yes").
EXIT_OK = 0
#: Refused or failed; one line on stderr says why.
EXIT_FAILURE = 1
#: Bad input: a config problem, a bad option or argument.
EXIT_USAGE = 2
#: Stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
