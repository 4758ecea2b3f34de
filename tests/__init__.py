"""Tests of ansible-worker, run against a real Mosquitto broker and real ansible-playbook."""
