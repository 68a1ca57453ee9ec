"""nbgrader configuration: the course's sources are solutions/, the student releases exercises/."""
c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "efficient-convolutions"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# Notebooks only: datasets come from installed packages, so nothing else needs releasing.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]
# Each test cell gets this many seconds; exercises are written to finish well inside it on 2 cores.
c.Execute.timeout = 120
c.ExecutePreprocessor.timeout = 120
# Student code must not leave stale state between runs.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# --- Grading settings (autograde only; nothing here changes what generate_assignment produces) ---
# A test cell the student deleted is put back (from the gradebook) and graded, not skipped.
c.OverwriteCells.add_missing_cells = True
# A cell that floods its output keeps the first 1000 lines in the graded notebook and feedback.
c.LimitOutput.max_lines = 1000
c.LimitOutput.max_traceback = 100
# An infinite loop is interrupted at the cell timeout (above) and the notebook goes on.
c.Execute.interrupt_on_timeout = True
# At the end of a notebook the kernel is stopped by signal, not by a message on its control channel:
# a notebook that wrote into its kernel's own sockets breaks that channel, and jupyter_client's send
# on it blocks until something kills nbgrader. (Nothing is lost: the notebook has finished.)
c.Execute.shutdown_kernel = "immediate"
