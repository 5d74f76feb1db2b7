"""Streamlit page scripts of the dashboard (run by ``st.navigation``, not imported)."""
