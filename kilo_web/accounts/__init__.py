"""Accounts: reflex-local-auth credentials linked to chat profiles.

``users`` creates accounts, bots and profiles outside Reflex (set-up, seed,
tests); ``state`` contains the Reflex login and registration states and
``current_profile_id``. ``pages`` contains the login and registration pages.
"""
