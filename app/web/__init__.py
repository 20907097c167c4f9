"""The speaker's page: plain HTML, CSS and ES modules, served as they are by `app.api.page`."""
