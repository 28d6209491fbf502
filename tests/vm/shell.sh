#!/bin/sh
# The guest's login shell for an interactive `make run` (vng --shell): vng's
# --exec gives no terminal, the shell does. Runs from the checkout.
insmod "build/$(uname -r)/kproxy.ko" && exec .venv/bin/kpctl
