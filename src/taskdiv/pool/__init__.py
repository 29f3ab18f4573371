"""The pool: prompts with task labels, from files, hub datasets and the benchmark collections.

`load.load_pool` is the way in; `container.Pool` the table it returns. The sources'
held-out rule is `splits`.
"""
