"""Protocol-faithful fakes of FCM and APNs, and what it takes to point the real clients at them."""
