"""The workstation daemon: answers eSZIG and MobilToken login challenges for one workstation.

It consumes only its own workstation's queue, accepts only challenges signed by the gateway's
pinned challenge key, asks the doctor for the PIN (or the MobilToken code) on the workstation,
drives the card through PC/SC, gets an rID from the eID server and answers on the broker. The
PIN never leaves this process.
"""
