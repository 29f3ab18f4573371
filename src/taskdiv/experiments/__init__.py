"""`taskdiv experiment` (`commands`): the grid (`grid`), run end to end and resumed
(`runner`), annotation in two rounds (`rounds`), the tables of the finished runs (`collate`)
and which code made them (`provenance`).
"""
