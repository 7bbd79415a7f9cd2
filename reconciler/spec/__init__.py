"""The spec format (`model`, `units`) and loading it from a specs dir with precise errors (`load`).

Import the submodule you need: importing the package loads nothing, so the pure planner can
use the model without pulling in the loader's file and YAML machinery.
"""
