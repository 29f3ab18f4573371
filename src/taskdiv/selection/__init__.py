"""`taskdiv select` and `taskdiv pool`: which prompts to annotate (`commands`), by the
strategies (`strategies`) over the allocation (`allocation`), k-center (`kcenter`), prompt
embeddings (`embeddings`) and the scores file (`scores`).
"""
