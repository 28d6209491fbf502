"""kpctl's command line and interactive shell (the library never imports this).

`commands` holds the one command table both modes use; `render` draws with
rich, `completer` and `repl` make the prompt-toolkit shell, `manpage` and
`bashcomp` are generated from the table.  Heavy modules (rich,
prompt_toolkit, pyroute2 through the library) are imported where needed, so
that `kpctl --help` starts fast.
"""
