# Not imported as a package: this folder goes on PYTHONPATH so that its
# sitecustomize.py runs at the start of every Python process (see patches.bootstrap).
