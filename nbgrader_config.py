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
