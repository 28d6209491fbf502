"""kpctl's command line and interactive shell (the library never imports this).

Where things are:
- args.py      declaring and parsing arguments (Opt, Arg, Command, parse_args)
- context.py   the Context a command runs in: client, streams, error reporting
- table.py     the command table, the help text, execute() for one line
- proxies.py, programs.py, observe.py, service.py, misc.py
               the handlers, by group (a new command's handler goes in one)
- jobs.py      the shell's background services (`serve ... &`)
- joining.py   the sockets `create --listen/--connect` makes
- columns.py, units.py, render.py
               plain text (no rich) and rich's tables, for people
- completer.py, repl.py
               the prompt-toolkit shell
- manpage.py, bashcomp.py
               generated from the table

Heavy modules (rich, prompt_toolkit, pyroute2 through the library) are
imported where needed, so that `kpctl --help` starts fast.
"""
