"""``ddpm-dashboard``: a local Streamlit app over the ``ddpm-*`` commands.

The logic lives in plain modules (``paths``, ``runs``, ``launch``, ``sampling``) tested without
Streamlit; ``app.py`` and ``views/`` only lay it out.
"""
