"""The engine binding: `backend` is the public face; `_lib` alone touches the compiled module."""
