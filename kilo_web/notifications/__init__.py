"""Push notifications with exactly-once badge accounting.

- ``badges``: badge bucket keys; ``accounting``: claims, increments and
  recounts of ``badge_counts``;
- ``dispatcher``: the pushes of a committed message and badge-only pushes;
- ``cleanup``: the persisted timer that deletes expired push records;
- ``devices``: Expo tokens and Web Push subscriptions per user;
- ``expo``, ``webpush``: the transports; ``vapid``: the Web Push key pair;
- ``preview``: notification title and grapheme-safe body;
- ``service``: ``NotificationService``, which the app wires in.
"""
