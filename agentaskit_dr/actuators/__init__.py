"""Actuators: the plug-ins that change the world (promote, fence, DNS, scale).

One module per target, importing ``agentaskit_dr.ports`` and nothing of each other;
import the one you need (``agentaskit_dr.actuators.promote``) so that using one does not
load every other's client library.
"""
