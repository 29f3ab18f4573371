"""`taskdiv report` (`commands`): the experiment's tables (`tables`), their statistics
(`statistics`), the markdown sections (`sections`) and the plots (`plots`).
"""
