"""Shared by every stage: settings and flags, errors, files and folders, the device, several processes, what is printed."""
