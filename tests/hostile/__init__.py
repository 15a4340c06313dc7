"""The hostile-input corpus: broken, malicious and oversized inputs and faults for every command.

Each case runs the real CLI (in-process through typer's runner; in a subprocess only for kills,
file-size limits, read-only mounts and other users) and asserts what a user is promised:

* exit 1 (the data is wrong) or 2 (the command was asked for something invalid);
* exactly one line on stderr, ``error: ...``, naming the file or key and the problem;
* no ``Traceback`` anywhere;
* nothing left behind and nothing touched: every file and folder under the case's folder (and
  the shared bundles) is byte-identical before and after.

Each group also has controls: the nearest valid input, which must succeed.
"""
