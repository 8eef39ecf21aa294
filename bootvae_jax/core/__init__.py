"""The ground floor every other package may use: video files, image metrics, device meshes."""
