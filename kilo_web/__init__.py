"""kilo_web: a self-hostable real-time chat web app."""
