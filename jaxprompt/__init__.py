"""jaxprompt."""
