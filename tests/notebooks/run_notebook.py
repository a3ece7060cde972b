"""Executes one notebook headlessly: `python run_notebook.py NOTEBOOK WORKDIR KERNEL CELL_TIMEOUT`.

The notebook tests run this in a child process, away from the IPython shells other tests create in
the pytest process (nbclient beside an in-process InteractiveShell has been seen to miss a reply
until the cell timeout). The executed notebook is written to WORKDIR/executed.ipynb; a failing
cell prints its error and exits 1.
"""
import sys

import nbclient
import nbformat


def main(path, workdir, kernel, timeout):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=int(timeout), kernel_name=kernel,
                                     resources={"metadata": {"path": workdir}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        nbformat.write(nb, f"{workdir}/executed.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
