# Load the schema first: suite modules (scenarios/density.py) subclass its SuiteRunner, and it imports them.
from scenarios import model as model
