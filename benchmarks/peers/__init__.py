"""Minimal broadcast servers built on other libraries, to compare rawchat with.

Each serves WebSocket at /ws and sends every text message it receives to
every connected client, sender included: rawchat's plain mode.
"""
