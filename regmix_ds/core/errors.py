"""The one exception type users see: a single line naming the file (or flag) and the problem."""


class RegmixError(Exception):
    """A bad input or an impossible request. The CLI prints it as one line and exits 2."""

    def __init__(self, where: object, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
