"""The service shell: command line now, HTTP service later."""
