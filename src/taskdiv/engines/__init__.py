"""Where generation runs: the models (`models`), the local engine (`local`), vLLM (`vllm`,
`vllm_server`) and Ray (`ray`). Scoring, embeddings and evaluation all generate through
these, so the engines sit below every stage.
"""
