"""The book's helpers, imported by the notebooks: exercise checkers (``checks``) and figures
(``plotting``), chapter by chapter in the order of the book."""
