"""LLM-as-judge labels: the rubric (``rubric.py``) and the off-path judging service (``service.py``)."""
