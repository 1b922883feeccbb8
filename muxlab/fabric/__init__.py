"""The fabric, pure: the lab's nodes and addressing as validated from lab.yml (lab), what a
deployment is rendered into (render), labs of any size (generate), and the lab as a
picture (drawing)."""
