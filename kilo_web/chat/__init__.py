"""Chat service: users' profiles, instances, conversations, members and messages.

``models`` holds the tables, ``service`` the operations, ``content`` the
message block rules, ``publisher`` the realtime fan-out interface,
``database`` engines and migrations, and ``errors`` every exception raised.
"""
