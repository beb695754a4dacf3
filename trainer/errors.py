"""The one exception type the trainer raises for problems a user can fix.

Its message is a single readable line naming what is wrong and what to change; the CLI prints it
without a traceback and the ComfyUI nodes show it as the node's error.
"""


class TrainerError(Exception):
    """A problem with the user's input (files, folders, settings), explained in one line."""
