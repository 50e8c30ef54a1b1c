"""`janelm serve`: an OpenAI-compatible HTTP server over the model, with a page to talk to it.

batcher.py decodes every request as a row of one batch (torch only); api.py is the HTTP side
(FastAPI, imported only by `janelm serve`); static/ holds the page.
"""
