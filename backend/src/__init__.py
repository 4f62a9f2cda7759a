"""Herald: a task tracker whose changes reliably become emails and live notifications."""
