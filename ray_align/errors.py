"""The one exception type for mistakes a user can fix (a bad path, a bad file, a bad flag).

`ray-align` prints its message as one line and exits with status 2, without a traceback. Anything else that
escapes a command is a bug: it keeps its traceback and exits 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message names it and says what to do."""
