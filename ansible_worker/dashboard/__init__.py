"""The web dashboard: a controller-side page showing a group's workers and jobs live, with cancel and run again."""
