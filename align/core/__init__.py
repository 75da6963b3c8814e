"""The ground floor: recipe keys and config files, errors that render as one line, atomic outputs and append logs,
the stage lifecycle (partial directory, resume, rename into place), preemption signals, console tables, bootstrap
intervals, timers, and `compat` (every private or version-sensitive use of a library, in one place).

Imports nothing from polyalign: every other layer may import it.
"""
