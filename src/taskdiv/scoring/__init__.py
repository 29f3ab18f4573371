"""`taskdiv score`: the base model's confidence on each prompt (`commands`), its metrics
(`metrics`) and its cache (`cache`).
"""
