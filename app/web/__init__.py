"""What people see: the enrollment, login and dictation pages, and the admin screens."""
