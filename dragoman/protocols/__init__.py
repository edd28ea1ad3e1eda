"""Knowledge of one wire protocol that more than one adapter needs (a dialect and its sibling
dialect, or a dialect and its backend): written once here, imported by both."""
